"""What every config file shares: the `:arg` grammar and the mesh block.

    python -m mcla_jax.main --config configs/mcla/sic.py:cifar10,b16 --workdir ...

A config file's ``get_config(arg)`` turns its argument into named fields with one call:

    a = parse_arg(arg, dataset=("imagenet_dogs", "cifar10"), clip=("b32", "b16"), runlocal=False)
    a.dataset, a.clip, a.runlocal          # "cifar10", "b16", False for "cifar10,b16"

``arg`` is comma-separated words. A word is ``key=value`` (typed like the field's default), the
name of a boolean field (sets it True), or one of the choices of exactly one tuple-valued field
(the first choice is the default). Anything else is a ``ConfigError`` that lists what is known.
"""

from __future__ import annotations

import ml_collections

from vl_jax.errors import ConfigError


def parse_arg(arg: str | None, **fields) -> ml_collections.ConfigDict:
    """Parses ``arg`` against ``fields`` (name -> default; a tuple = choices, first = default).

    Raises:
      ConfigError: an unknown word, a word that several fields accept, a bad ``key=value``.
    """
    out = {k: (v[0] if isinstance(v, tuple) else v) for k, v in fields.items()}
    for word in (w.strip() for w in (arg or "").split(",")):
        if not word:
            continue
        if "=" in word:
            key, value = (s.strip() for s in word.split("=", 1))
            if key not in fields:
                raise ConfigError(
                    f"config arg {arg!r}: unknown field {key!r}; known: {sorted(fields)}"
                )
            out[key] = _typed(key, value, fields[key], arg)
            continue
        if isinstance(fields.get(word), bool):
            out[word] = True
            continue
        owners = [k for k, v in fields.items() if isinstance(v, tuple) and word in v]
        if len(owners) != 1:
            known = {  # a None first choice means "unset" and is not a word
                k: [c for c in v if c is not None]
                for k, v in fields.items()
                if isinstance(v, tuple)
            }
            flags = [k for k, v in fields.items() if isinstance(v, bool)]
            why = "is ambiguous" if owners else "is not known"
            raise ConfigError(
                f"config arg {arg!r}: {word!r} {why}; choices: {known}, flags: {flags}, "
                f"or key=value"
            )
        out[owners[0]] = word
    return ml_collections.ConfigDict(out)


def _typed(key: str, value: str, default, arg: str):
    if isinstance(default, tuple):
        if value not in default:
            raise ConfigError(f"config arg {arg!r}: {key} must be one of {list(default)}")
        return value
    if isinstance(default, bool):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"config arg {arg!r}: {key} must be true or false")
        return value.lower() in ("true", "1")
    try:
        return type(default)(value) if default is not None else value
    except ValueError:
        raise ConfigError(
            f"config arg {arg!r}: {key}={value!r} is not a {type(default).__name__}"
        ) from None


def mesh(data: int = -1, model: int = 1) -> ml_collections.ConfigDict:
    """The device mesh block (``vl_jax.parallel.mesh_from_config``): ``data`` x ``model``
    devices; -1 = all devices not used by the other axis."""
    return ml_collections.ConfigDict(dict(data=data, model=model))
