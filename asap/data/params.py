"""The `prepare` section of params.yaml as one typed value: shared settings + one config per dataset."""

from __future__ import annotations

from dataclasses import dataclass

from asap.config import ConfigError, from_dict, require

DATASETS = ("facades", "cityscapes", "nyu", "folders")


@dataclass(frozen=True)
class PrepareParams:
    workers: int | None               # decoding/resizing processes; None = all cores
    skip_bad: bool                    # skip bad pairs (listed in dataset.json) instead of failing
    facades: object                   # asap.data.facades.FacadesConfig
    cityscapes: object                # asap.data.cityscapes.CityscapesConfig
    nyu: object                       # asap.data.nyu.NYUConfig
    folders: object                   # asap.data.folders.FoldersConfig

    @classmethod
    def from_section(cls, section) -> "PrepareParams":
        from asap.data import cityscapes, facades, folders, nyu

        where = "params.yaml prepare"
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise ConfigError(f"{where} must be a mapping (workers, skip_bad, {', '.join(DATASETS)}), got {section!r}")
        allowed = {"workers", "skip_bad", *DATASETS}
        unknown = sorted(set(section) - allowed)
        require(not unknown, f"unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")
        workers = section.get("workers")
        require(workers is None or (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1),
                f"prepare.workers must be a positive integer or null (all cores), got {workers!r}")
        skip_bad = section.get("skip_bad", False)
        require(isinstance(skip_bad, bool), f"prepare.skip_bad must be true or false, got {skip_bad!r}")
        configs = {}
        for name, cfg_cls in (("facades", facades.FacadesConfig), ("cityscapes", cityscapes.CityscapesConfig),
                              ("nyu", nyu.NYUConfig), ("folders", folders.FoldersConfig)):
            sub = section.get(name)
            require(sub is None or isinstance(sub, dict), f"{where}.{name} must be a mapping, got {sub!r}")
            configs[name] = from_dict(cfg_cls, sub, f"{where}.{name}")
        return cls(workers=workers, skip_bad=skip_bad, **configs)
