"""The ONE place peftkit hooks its bottleneck adapters into PEFT (guarded by tests/methods/test_bottleneck_route.py).

PEFT's `register_peft_method` only accepts names already in its closed `PeftType` enum, so we add a member
`BOTTLENECK` to that enum first (enum internals: `_member_map_`, `_value2member_map_`, `_member_names_`), then
register config and tuner through PEFT's public call. Everything after that — get_peft_model, save_pretrained,
PeftModel.from_pretrained, disable_adapter — is PEFT's own code path.
"""

from __future__ import annotations

NAME = "bottleneck"


def _extend_peft_type():
    from peft.utils import PeftType

    key = NAME.upper()
    if key in PeftType.__members__:
        return PeftType[key]
    member = str.__new__(PeftType, key)
    member._name_, member._value_ = key, key
    member.__objclass__ = PeftType
    member.__init__(key)
    type.__setattr__(PeftType, key, member)
    PeftType._member_map_[key] = member
    PeftType._value2member_map_[key] = member
    PeftType._member_names_.append(key)
    return member


PEFT_TYPE = _extend_peft_type()


def register_with_peft(config_cls, model_cls) -> None:
    """Register config + tuner under `bottleneck` (idempotent: a re-import must not raise)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method

    if PEFT_TYPE in PEFT_TYPE_TO_CONFIG_MAPPING:
        return
    register_peft_method(name=NAME, config_cls=config_cls, model_cls=model_cls, prefix="bottleneck_")
