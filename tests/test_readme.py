"""README.md and docs/*.md: results only as copies of files under results/, links that
resolve, and no path outside the repository."""
import glob
import os
import re
import subprocess
import sys
import unicodedata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r'^ {0,3}(```|~~~)')
HEADING = re.compile(r'^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$')
# [text](target) or ![alt](target), with an optional "title".
LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)')
CODE_SPAN = re.compile(r'(`+).+?\1')


def pages() -> list[str]:
  return ['README.md'] + sorted(os.path.relpath(p, ROOT)
                                for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))


def read(page: str) -> str:
  with open(os.path.join(ROOT, page)) as f:
    return f.read()


def prose_lines(text: str):
  """(line number, line) of the lines outside fenced code blocks."""
  fenced = False
  for number, line in enumerate(text.split('\n'), 1):
    if FENCE.match(line):
      fenced = not fenced
    elif not fenced:
      yield number, line


def slug(heading: str) -> str:
  """GitHub's anchor of a heading: its text as rendered, lowercase, spaces to '-', and every
  character but letters, digits, '-' and '_' dropped."""
  text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading).strip().lower()
  kept = ''.join(c for c in text
                 if c in ' -_' or unicodedata.category(c)[0] in 'LNM')
  return kept.replace(' ', '-')


def anchors(text: str) -> set[str]:
  """Every heading's anchor, duplicates numbered as GitHub numbers them (x, x-1, x-2)."""
  seen: dict[str, int] = {}
  found = set()
  for _, line in prose_lines(text):
    if match := HEADING.match(line):
      base = slug(match[1])
      count = seen.get(base, 0)
      seen[base] = count + 1
      found.add(base if count == 0 else f'{base}-{count}')
  return found


def links(text: str):
  """(line number, target, start, end) of every markdown link outside code."""
  for number, line in prose_lines(text):
    line = CODE_SPAN.sub(lambda m: ' ' * len(m[0]), line)
    for match in LINK.finditer(line):
      yield number, match[1], match.start(1), match.end(1)


def is_url(target: str) -> bool:
  return re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*:', target) is not None


def resolve(page: str, path: str) -> str:
  return os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path))


def inside(path: str) -> bool:
  return os.path.commonpath([ROOT, path]) == ROOT


def link_problems(page: str, text: str) -> list[str]:
  """The links of `page` whose file or anchor does not exist."""
  problems = []
  for number, target, _, _ in links(text):
    if not target or is_url(target):
      continue
    path, _, anchor = target.partition('#')
    file = resolve(page, path) if path else os.path.join(ROOT, page)
    where = f'{page}:{number}: {target}'
    if not inside(file):
      problems.append(f'{where} leaves the repository')
    elif not os.path.exists(file):
      problems.append(f'{where}: no such file')
    elif anchor:
      if not file.endswith('.md'):
        problems.append(f'{where}: an anchor into a file that is not markdown')
      else:
        with open(file) as f:
          if anchor not in anchors(f.read()):
            problems.append(f'{where}: no heading with that anchor in '
                            f'{os.path.relpath(file, ROOT)}')
  return problems


def outside_problems(page: str, text: str) -> list[str]:
  """Every mention of a path outside the repository: '../shared', a link climbing above the
  root, or any other '../' that is not part of a link staying inside the repository."""
  problems = []
  lines = text.split('\n')
  allowed = {}  # line number -> spans of link targets that resolve inside the repository
  for number, target, start, end in links(text):
    path = target.partition('#')[0]
    if path and not is_url(target) and inside(resolve(page, path)):
      allowed.setdefault(number, []).append((start, end))
  for number, line in enumerate(lines, 1):
    if '../shared' in line:
      problems.append(f'{page}:{number}: names ../shared')
      continue
    for match in re.finditer(r'\.\./', line):
      if not any(start <= match.start() < end for start, end in allowed.get(number, [])):
        problems.append(f'{page}:{number}: names a path outside the repository: '
                        f'{line.strip()}')
        break
  return problems


def test_result_blocks_equal_their_files():
  process = subprocess.run([sys.executable, 'experiments/readme_tables.py', '--check'],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert process.returncode == 0, process.stderr
  included = {page: re.findall(r'<!-- include (\S+)[^>]*-->', read(page)) for page in pages()}
  assert included['README.md'], 'README.md includes no result'
  assert all(p.startswith('results/') for paths in included.values() for p in paths), included


def test_every_relative_link_resolves():
  problems = [p for page in pages() for p in link_problems(page, read(page))]
  assert not problems, '\n'.join(problems)


def test_no_page_names_a_path_outside_the_repository():
  problems = [p for page in pages() for p in outside_problems(page, read(page))]
  assert not problems, '\n'.join(problems)


def test_the_checks_catch_what_they_should():
  page = 'docs/methods.md'
  assert slug('Deep Mutual Learning and SiLa + DML') == 'deep-mutual-learning-and-sila--dml'
  assert slug('GPU: data on the device, `bfloat16`') == 'gpu-data-on-the-device-bfloat16'
  assert anchors('# A\n## A\n```\n# A\n```\n### A\n') == {'a', 'a-1', 'a-2'}
  assert link_problems(page, '[ok](../README.md#how-to-cite) [ok](#losses)') == []
  assert len(link_problems(page, '[x](nowhere.md) [y](#no-such-heading) '
                           '[z](configs.md#no-such-heading) [w](../../x.md)')) == 4
  assert link_problems(page, '`[not a link](nowhere.md)`\n```\n[x](nowhere.md)\n```') == []
  assert outside_problems(page, '[ok](../README.md) [ok](../results/ablation/summary.md)') == []
  assert len(outside_problems(page, 'see ../shared/data\n`../elsewhere`\n[x](../../x.md)')) == 3
