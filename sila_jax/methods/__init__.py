"""What trains: the Method interface (base), the methods (plain, sila, one, clilr, byot; one
module each), and what they share: the peer axis (peers) and the losses.

`config.method` names one of METHODS. Adding a method is adding its module, its line here,
its config fields and its tests (docs/architecture.md).
"""
import ml_collections

from sila_jax.methods.base import Method
from sila_jax.methods.byot import Byot
from sila_jax.methods.clilr import ClIlr
from sila_jax.methods.one import One
from sila_jax.methods.plain import Plain
from sila_jax.methods.sila import Sila

METHODS: dict[str, type[Method]] = {'plain': Plain, 'sila': Sila, 'one': One, 'clilr': ClIlr,
                                    'byot': Byot}


def method_class(config: ml_collections.ConfigDict) -> type[Method]:
  """The class `config` trains with: METHODS[config.method]; with sila.enabled=False SiLa is
  plain training, as before config.method existed."""
  if config.method == 'sila' and not config.sila.enabled:
    return Plain
  return METHODS[config.method]


def name(config: ml_collections.ConfigDict) -> str:
  """The METHODS key of the class `config` trains with (method_class)."""
  return next(key for key, cls in METHODS.items() if cls is method_class(config))


def create(config: ml_collections.ConfigDict, **kwargs) -> Method:
  """`config`'s method for its peers; kwargs: Method's (bn_axis_name, steps_per_epoch)."""
  return method_class(config)(config, **kwargs)


def structure_fields(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The config fields that fix `config`'s training parameter tree beside the main branch."""
  return ('method', *METHODS[config.method].structure_fields)
