"""fastenc.AutoModel and friends: transformers' Auto* resolution, answered with fastenc's class of the same name.

`fastenc.AutoModelForSequenceClassification.from_pretrained(path)` reads the config, lets transformers' own
mapping pick the architecture (BertForSequenceClassification, ...), and loads fastenc's class of that name.
transformers' global Auto* registry is left untouched (registering there would change what every other caller of
transformers.AutoModel gets). An architecture fastenc does not cover raises ValueError naming it.
"""

from __future__ import annotations

import os
from typing import Any

from fastenc.models import MODEL_CLASSES
from fastenc.models.families import AUTO_NAMES
from fastenc.models.hf_internals import auto_model_class


class _FastencAuto:
    _hf_auto: str = ""

    @classmethod
    def _resolve(cls, config: Any) -> type:
        hf_cls = auto_model_class(config, cls._hf_auto)
        ours = MODEL_CLASSES.get(hf_cls.__name__)
        if ours is None:
            raise ValueError(f"{cls.__name__}: fastenc has no class for {hf_cls.__name__} (model_type "
                             f"{config.model_type!r}); supported: {sorted(MODEL_CLASSES)}")
        return ours

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> Any:
        return cls._resolve(config)._from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        from transformers import AutoConfig

        config = kwargs.pop("config", None)
        if config is None:
            hub = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only", "trust_remote_code",
                                          "subfolder") if k in kwargs}
            config, kwargs = AutoConfig.from_pretrained(pretrained_model_name_or_path, return_unused_kwargs=True,
                                                        **hub, **{k: v for k, v in kwargs.items() if k not in hub})
            kwargs.update(hub)
        return cls._resolve(config).from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)


def _auto(name: str) -> type:
    return type(name, (_FastencAuto,), {"_hf_auto": name, "__module__": __name__,
                                         "__doc__": f"transformers.{name}, resolved to fastenc's classes."})


_AUTOS = {name: _auto(name) for name in AUTO_NAMES}
globals().update(_AUTOS)
__all__ = list(_AUTOS)
