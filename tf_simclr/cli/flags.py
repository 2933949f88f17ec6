"""The trainer's absl flags, generated from the config's field declarations (`config.option`).

Nothing here lists a flag by hand: every field of `ModelConfig`, `DataConfig`,
`TrainConfig` and `RunConfig` becomes one flag with its name, default and help,
so the reference's commands (`--train_batch_size=4096 --use_tpu=False ...`)
parse as they do there, and `config_from_flags` turns the parsed values into a
`Config` with no mapping to keep in sync.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Optional

from absl import flags

from tf_simclr.config import SECTIONS, Config, flag_name


def _base_type(annotation):
    """`int` for `int` and `Optional[int]`, and so on."""
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one absl flag per config field (idempotent: defining twice is a no-op)."""
    for cls in SECTIONS.values():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            name = flag_name(field)
            if name in flag_values:
                continue
            kind = _base_type(hints[field.name])
            help_text = field.metadata.get("help", "")
            choices = field.metadata.get("choices")
            if choices:
                flags.DEFINE_enum(name, field.default, list(choices), help_text, flag_values=flag_values)
            elif kind is bool:
                flags.DEFINE_bool(name, field.default, help_text, flag_values=flag_values)
            elif kind is int:
                flags.DEFINE_integer(name, field.default, help_text, flag_values=flag_values)
            elif kind is float:
                flags.DEFINE_float(name, field.default, help_text, flag_values=flag_values)
            elif kind is str:
                flags.DEFINE_string(name, field.default, help_text, flag_values=flag_values)
            else:  # A new field type needs a line here; fail loudly rather than drop the flag.
                raise TypeError(f"No flag type for config field {cls.__name__}.{field.name}: {kind}")


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> Config:
    """The parsed flags as a `Config` (the only place flag values are read)."""
    sections = {}
    for section, cls in SECTIONS.items():
        values = {field.name: flag_values[flag_name(field)].value for field in dataclasses.fields(cls)}
        sections[section] = cls(**values)
    return Config(**sections)


def flag_for(section: str, field: str) -> Optional[str]:
    """The command-line name of `Config.<section>.<field>` (for messages)."""
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name == field:
            return flag_name(f)
    return None
