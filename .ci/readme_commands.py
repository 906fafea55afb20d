"""Print the README's two commands (its first ```bash block), one a line, for .ci/run.

.ci/run runs exactly these, in order, in a fresh virtual environment: what a new user
does first. Fails unless the block holds two commands: install and try, then test.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def readme_commands(path: str = os.path.join(HERE, os.pardir, "README.md")) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if "```bash\n" not in text:
        raise SystemExit("README.md: no ```bash block")
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    # the commands, without their trailing comments (no '#' inside a command)
    commands = [line.split(" #", 1)[0].strip() for line in block.splitlines()]
    commands = [c for c in commands if c and not c.startswith("#")]
    if len(commands) != 2:
        raise SystemExit(f"README.md: expected two commands in the first bash block, "
                         f"got {commands!r}")
    return commands


if __name__ == "__main__":
    sys.stdout.write("".join(c + "\n" for c in readme_commands()))
