"""bench/RESULTS.md is made of sections (a "# " or "## " heading and what follows it); each
script replaces its own and keeps the others, so the table, the profile and the notes written
by hand live in one file."""

import os


def _sections(text):
    sections, current = [], []
    for line in text.splitlines():
        if (line.startswith("# ") or line.startswith("## ")) and current:
            sections.append("\n".join(current).strip("\n"))
            current = []
        current.append(line)
    if current:
        sections.append("\n".join(current).strip("\n"))
    return sections


def replace_section(path, heading_prefix, text):
    """Put text in place of the section whose heading starts with heading_prefix (else append)."""
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    sections = _sections(old)
    text = text.strip("\n")
    for n, section in enumerate(sections):
        if section.split("\n", 1)[0].startswith(heading_prefix):
            sections[n] = text
            break
    else:
        sections.append(text)
    with open(path, "w") as f:
        f.write("\n\n".join(sections) + "\n")
