"""Training and fine-tuning of the segmentation models (Qt-free).

Modules: ``config`` (``TrainConfig``, torch-free), ``data`` (cases as slices, splits, balanced
batches, ``hold_back``), ``augment`` (random affine augmentation), ``engine`` (``train``,
``training_events``, ``drive``), ``finetune`` (the checked fine-tune of the panel and ``dunet
train --init``), ``interrupt`` (stop requests answered at once), ``synthetic`` (drawn and
rehearsal cases), ``state`` (resumable state files), ``distributed`` (``torchrun``).
Nothing is imported here, so importing ``napari_dunet.training.config`` stays torch-free.

Typical use::

    from napari_dunet.training.config import TrainConfig
    from napari_dunet.training.data import find_training_cases, load_cases, split_cases
    from napari_dunet.training.engine import train

    train_files, val_files = split_cases(find_training_cases(["ATLAS_2/Training"]), 0.2)
    result = train(load_cases(train_files), load_cases(val_files), TrainConfig(epochs=150),
                   "dunet_atlas.safetensors")

``out`` is an ordinary checkpoint (``checkpoint.load_checkpoint``); the resumable state sits
beside it (``state.state_path``). ``dunet train`` calls this; a fine-tune on corrected cases
goes through ``finetune.fine_tune_events``.
"""
