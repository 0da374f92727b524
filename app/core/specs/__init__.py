"""Job specifications: what a job asks for, shared by the API and the worker; no torch, no fastapi.

- ``datasets``: dataset specs and their facts (shape, classes, files);
- ``networks``: network specs of each kind and the ``Encoder`` they have or start from;
- ``jobs``: ``TrainSpec``, ``PretrainSpec``, ``FinetuneSpec``, ``parse_job_spec``; ``presets``;
- ``resources``: devices per node and nodes (more than one rank: data-parallel).
"""

from app.core.specs.base import Shape, Text, escaped, literal_names, storable_text
from app.core.specs.datasets import (
    DATASET_NAMES,
    AnyDataset,
    DatasetSpec,
    DigitsDataset,
    ImageFolderDataset,
    SyntheticDataset,
    TorchvisionDataset,
)
from app.core.specs.jobs import (
    JOB_KINDS,
    AnyJobSpec,
    FinetuneSpec,
    JobSpec,
    PretrainSpec,
    TrainSpec,
    job_spec_adapter,
    parse_job_spec,
    spec_to_json,
)
from app.core.specs.networks import (
    FINETUNE_ARCHS,
    MLP_BOTTLENECK,
    MLP_HIDDEN,
    PRETRAIN_ARCHS,
    SEED_MLP_BOTTLENECK,
    SEED_MLP_HIDDEN,
    AnyPretrainModel,
    ConvAutoencoderModel,
    DcganModel,
    Encoder,
    FinetuneModel,
    InitSpec,
    MlpAutoencoderModel,
    PretrainModel,
    SeedMlpAutoencoderModel,
)
from app.core.specs.presets import PRESETS, apply_preset
from app.core.specs.resources import Resources

__all__ = [
    "DATASET_NAMES",
    "FINETUNE_ARCHS",
    "JOB_KINDS",
    "MLP_BOTTLENECK",
    "MLP_HIDDEN",
    "PRESETS",
    "PRETRAIN_ARCHS",
    "SEED_MLP_BOTTLENECK",
    "SEED_MLP_HIDDEN",
    "AnyDataset",
    "AnyJobSpec",
    "AnyPretrainModel",
    "ConvAutoencoderModel",
    "DatasetSpec",
    "DcganModel",
    "DigitsDataset",
    "Encoder",
    "FinetuneModel",
    "FinetuneSpec",
    "ImageFolderDataset",
    "InitSpec",
    "JobSpec",
    "MlpAutoencoderModel",
    "PretrainModel",
    "PretrainSpec",
    "Resources",
    "SeedMlpAutoencoderModel",
    "Shape",
    "SyntheticDataset",
    "Text",
    "TorchvisionDataset",
    "TrainSpec",
    "apply_preset",
    "escaped",
    "job_spec_adapter",
    "literal_names",
    "parse_job_spec",
    "spec_to_json",
    "storable_text",
]
