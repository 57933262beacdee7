"""Copies result files into README.md and docs/*.md, so that every number they report comes
from results/.

  python experiments/readme_tables.py [--check]

In each page (README.md and every docs/*.md), a line

  <!-- include results/<path> [code] [level=N] -->

is followed by that file's text, up to the next `<!-- end include -->`; this script rewrites
those blocks from the files. `code` puts the text in a fenced code block, as it is. Otherwise
the file is markdown, and its headings are shifted to sit under the page's: the file's top
heading level becomes N + 1, where N is `level=N` if the marker gives it, else the level of
the nearest heading above the marker in the page's own text (0 if there is none); deeper
headings keep their distance from the top one (at most `######`). With --check it changes
nothing and exits 1 naming, by page, the blocks that differ from their files.
"""
import argparse
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r'(<!-- include (\S+)((?: code| level=\d)*) -->\n)(.*?)(<!-- end include -->)',
                   re.DOTALL)
HEADING = re.compile(r'^ {0,3}(#{1,6})(?=[ \t]|$)', re.MULTILINE)
FENCE = re.compile(r'^ {0,3}(```|~~~)')


def pages() -> list[str]:
  """The pages that may include results, relative to the repository: README.md, docs/*.md."""
  found = glob.glob(os.path.join(ROOT, 'README.md')) + sorted(
      glob.glob(os.path.join(ROOT, 'docs', '*.md')))
  return [os.path.relpath(p, ROOT) for p in found]


def _outside_fences(lines: list[str]):
  """(index, line) of the lines not inside a fenced code block."""
  fenced = False
  for i, line in enumerate(lines):
    if FENCE.match(line):
      fenced = not fenced
    elif not fenced:
      yield i, line


def _shift_headings(text: str, enclosing: int) -> str:
  """`text` with its top heading level moved to enclosing + 1 (fenced code left alone)."""
  lines = text.split('\n')
  levels = {i: len(m[1]) for i, line in _outside_fences(lines) if (m := HEADING.match(line))}
  if not levels:
    return text
  shift = enclosing + 1 - min(levels.values())
  for i, level in levels.items():
    lines[i] = HEADING.sub('#' * max(1, min(6, level + shift)), lines[i], count=1)
  return '\n'.join(lines)


def _enclosing_level(page: str, position: int) -> int:
  """The level of the page's last heading before `position`, included blocks left out."""
  own = BLOCK.sub(lambda m: m[1] + m[5], page[:position])
  level = 0
  for _, line in _outside_fences(own.split('\n')):
    if m := HEADING.match(line):
      level = len(m[1])
  return level


def included(page: str) -> tuple[str, list[str]]:
  """A page's text with every include block refreshed, and the paths whose blocks changed.
  Raises FileNotFoundError for an include of a file that does not exist."""
  changed = []

  def refresh(match):
    options = match[3].split()
    with open(os.path.join(ROOT, match[2])) as f:
      text = f.read()
    if 'code' in options:
      text = f'```text\n{text}```\n'
    else:
      level = next((int(o[6:]) for o in options if o.startswith('level=')), None)
      text = _shift_headings(text, _enclosing_level(page, match.start())
                             if level is None else level)
    if text != match[4]:
      changed.append(match[2])
    return match[1] + text + match[5]
  return BLOCK.sub(refresh, page), changed


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--check', action='store_true', help='only report stale blocks')
  args = parser.parse_args()
  stale = []
  for name in pages():
    path = os.path.join(ROOT, name)
    with open(path) as f:
      try:
        fresh, changed = included(f.read())
      except FileNotFoundError as e:
        sys.exit(f'{name} includes a file that does not exist: '
                 f'{os.path.relpath(e.filename, ROOT)}')
    stale += [f'{name}: {p}' for p in changed]
    if changed and not args.check:
      with open(path, 'w') as f:
        f.write(fresh)
      print(f'Refreshed {name}: {", ".join(changed)}.')
  if args.check and stale:
    sys.exit('Blocks differ from their files (run python experiments/readme_tables.py): '
             + '; '.join(stale))
  if not stale and not args.check:
    print('Every block equals its file.')


if __name__ == '__main__':
  main()
