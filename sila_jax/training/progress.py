"""Progress of a loop: a live tqdm bar on a terminal, log lines anywhere else.

On a terminal (stdout is a tty) the bar redraws in place and messages print above it. Piped
to a file, under nohup or in a notebook's captured output, every message is one log line
that starts with the same figures the bar shows (step / total, elapsed, ETA, rate), and a
line without a message follows every `every_secs` of silence. Only process 0 shows anything.
The rate and ETA count the units after the first: the first (a step's compilation, say)
would make them say nothing about the rest.
"""
import os
import sys
from typing import Any, Iterable, Iterator, TextIO, TypeVar

import jax
import tqdm
from absl import logging

T = TypeVar('T')
_BAR = ('{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} '
        '[{elapsed}, ETA {remaining}, {rate_fmt}{postfix}]')
_UNSIZED = (100, 24)  # Columns and rows of a terminal that does not say.
_LINE = '{desc} {n_fmt}/{total_fmt} ({percentage:.0f}%) elapsed {elapsed}, ETA {remaining}'


class _SteadyBar(tqdm.tqdm):
  """A tqdm bar whose rate (and so ETA) is that of the units after the first one counted."""

  def __init__(self, *args, **kwargs):
    self._first = None  # (count, time) once the first unit is counted.
    super().__init__(*args, **kwargs)

  def update(self, n: float = 1) -> bool | None:
    if self._first is None and n:
      self._first = (self.n + n, self._time())
    return super().update(n)

  @property
  def format_dict(self) -> dict[str, Any]:
    meter = super().format_dict
    # tqdm shows an ETA and rate of '?' for a rate of 0: until a second unit is counted.
    meter['rate'] = 0
    if self._first is not None and self.n > self._first[0]:
      count, start = self._first
      meter['rate'] = (self.n - count) / max(self._time() - start, 1e-9)
    return meter


def _columns(stream: TextIO) -> int:
  """The width of the terminal `stream` writes to; 0 when it does not say."""
  try:
    return os.get_terminal_size(stream.fileno()).columns
  except (OSError, ValueError):  # No file descriptor (io.UnsupportedOperation), or no tty.
    return 0


class Progress:
  """Counts `initial`..`total` units of `desc` ('train', 'eval') and shows the count and ETA.

  Use as a context manager (closing removes the bar); `update` after each unit, `set` for
  the figures shown beside the count (epoch, images/s, loss, ...), `write` for messages.
  """

  def __init__(self, desc: str, total: int, initial: int = 0, unit: str = 'step',
               every_secs: float = 60.0, stream: TextIO | None = None, leave: bool = True):
    stream = stream or sys.stdout
    self._shown = jax.process_index() == 0
    self._live = self._shown and stream.isatty()
    self._every_secs = every_secs
    # Off a terminal the bar draws into /dev/null: it still keeps the count, rate and ETA.
    self._sink = None if self._live else open(os.devnull, 'w')
    # Follow the terminal's size; a pseudo-terminal without one (`script`, `docker -t`)
    # reports 0 x 0, in which tqdm would draw nothing.
    sized = self._live and _columns(stream) > 0
    self._bar = _SteadyBar(total=total, initial=initial, desc=desc, unit=unit,
                           file=stream if self._live else self._sink, bar_format=_BAR,
                           dynamic_ncols=sized, ncols=None if sized else _UNSIZED[0],
                           nrows=None if sized else _UNSIZED[1], leave=leave, mininterval=0.5)
    self._last_line = self._bar.format_dict['elapsed']

  def __enter__(self) -> 'Progress':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def update(self, n: int = 1) -> None:
    """Counts `n` more units; off a terminal, logs the figures if `every_secs` went silent."""
    self._bar.update(n)
    if not self._live and self._bar.format_dict['elapsed'] - self._last_line >= self._every_secs:
      self.write('')

  def track(self, items: Iterable[T]) -> Iterator[T]:
    """Yields `items`, counting one unit after each."""
    for item in items:
      yield item
      self.update()

  def set(self, **figures: Any) -> None:
    """Shows `figures` (name=value) beside the count from now on."""
    self._bar.set_postfix({k: f'{v:.4g}' if isinstance(v, float) else v
                           for k, v in figures.items()}, refresh=False)

  def line(self) -> str:
    """The count, elapsed time and ETA as text: 'train 120/400 (30%) elapsed 00:41, ETA 01:35'."""
    meter = self._bar.format_dict
    meter['bar_format'] = _LINE
    return tqdm.tqdm.format_meter(**{**meter, 'postfix': None})

  def write(self, message: str) -> None:
    """Prints `message` above the bar after the count, or logs it after the count and ETA."""
    if not self._shown:
      return
    if self._live:
      self._bar.write(f'{self._bar.desc} {self._bar.n}/{self._bar.total} | {message}',
                      file=self._bar.fp)
    else:
      self._last_line = self._bar.format_dict['elapsed']
      logging.info('%s%s', self.line(), f' | {message}' if message else '')

  def close(self) -> None:
    self._bar.close()
    if self._sink:
      self._sink.close()
