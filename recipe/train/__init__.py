"""train: networks and how they learn: models and layer groups, optimizers and schedules,
augmentation, the training loop, the training context the stages share (checkpoints, data,
batches, phases, histories), and the stages baseline, lr_find, train_head, finetune, resize.

Imports: ``recipe.core``, ``recipe.data``, ``recipe.report`` (pictures).
"""
