"""The ``.. code-block::`` directives of a reStructuredText guide, for the tests that run or parse the docs."""

import re
import textwrap
from collections import namedtuple

CodeBlock = namedtuple("CodeBlock", "line lang options body")

_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. code-block:: (?P<lang>[\w+-]+)[ \t]*\n(?P<options>(?:(?P=indent)[ \t]+:.*\n)*)\n",
                        re.MULTILINE)


def code_blocks(path):
    """Every code block of ``path`` in order: its line number, language, option lines (``:caption: ...``) and body."""
    text = path.read_text(encoding="utf-8")
    for match in _DIRECTIVE.finditer(text):
        indent = len(match.group("indent").expandtabs())
        lines = []
        for line in text[match.end():].splitlines():
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            lines.append(line)
        body = textwrap.dedent("\n".join(lines)).strip("\n") + "\n"
        yield CodeBlock(text.count("\n", 0, match.start()) + 1, match.group("lang"), match.group("options"), body)
