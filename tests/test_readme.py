"""README.md reports results only as copies of files under results/."""
import os
import re
import subprocess
import sys

from tests.test_faults import ROOT


def test_readme_result_blocks_equal_their_files():
  process = subprocess.run([sys.executable, 'experiments/readme_tables.py', '--check'],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert process.returncode == 0, process.stderr
  with open(os.path.join(ROOT, 'README.md')) as f:
    paths = re.findall(r'<!-- include (\S+)(?: code)? -->', f.read())
  assert paths and all(p.startswith('results/') for p in paths)
