"""Shared by the training benchmarks: the trainer's state for stepping one fixed set of pairs, without a run
directory (no checkpoints, no metrics file): the optimizer, masters and launcher as the trainer's own `optimization`
makes them, at a constant learning rate."""

from __future__ import annotations


def bare_train_state(model, recipe, accelerator, tokens, references, pad_token_id: int, sharing):
    from wpo.training import trainer
    from wpo.training.metrics import WeightLedger
    from wpo.training.schedule import build_schedule

    schedule = build_schedule(len(tokens.pairs), recipe.train, recipe.seed, 1)
    model, optimizer, scheduler, launcher = trainer.optimization(
        model, recipe.train, accelerator, schedule, resuming=False, lr_scheduler="constant"
    )
    return trainer.StepState(
        cfg=recipe.train,
        accelerator=accelerator,
        launcher=launcher,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=trainer.bind_loss(recipe.train),
        tokens=tokens,
        references=references,
        schedule=schedule,
        pad_token_id=pad_token_id,
        sharing=sharing,
        weights=WeightLedger(),
    )
