"""Copies result files into README.md, so that every number it reports comes from results/.

  python experiments/readme_tables.py [--check]

Each `<!-- include results/<path> -->` line in README.md is followed by that file's text, up
to the next `<!-- end include -->` (`<!-- include results/<path> code -->`: the text in a
fenced code block); this script rewrites those blocks from the files. With
--check it changes nothing and exits 1 naming the blocks that differ from their files.
"""
import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r'(<!-- include (\S+)( code)? -->\n)(.*?)(<!-- end include -->)', re.DOTALL)


def included(readme: str) -> tuple[str, list[str]]:
  """README text with every include block refreshed, and the paths whose blocks changed."""
  changed = []

  def refresh(match):
    with open(os.path.join(ROOT, match[2])) as f:
      text = f.read()
    if match[3]:
      text = f'```text\n{text}```\n'
    if text != match[4]:
      changed.append(match[2])
    return match[1] + text + match[5]
  return BLOCK.sub(refresh, readme), changed


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--check', action='store_true', help='only report stale blocks')
  args = parser.parse_args()
  path = os.path.join(ROOT, 'README.md')
  with open(path) as f:
    fresh, changed = included(f.read())
  if args.check:
    if changed:
      sys.exit(f'README.md blocks differ from their files: {", ".join(changed)}; run '
               'python experiments/readme_tables.py')
    return
  with open(path, 'w') as f:
    f.write(fresh)
  print(f'Refreshed {len(changed)} block(s): {", ".join(changed) or "none"}.')


if __name__ == '__main__':
  main()
