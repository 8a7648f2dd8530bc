"""Shared by the training benchmarks: the trainer's state for stepping one fixed set of pairs, without a run
directory (no checkpoints, no metrics file): the optimizer and masters as the trainer makes them, a constant
learning rate, the launcher's `prepare`."""

from __future__ import annotations


def bare_train_state(model, recipe, accelerator, tokens, references, pad_token_id: int, sharing):
    from transformers import get_scheduler

    from wpo.training import trainer
    from wpo.training.launchers import make_launcher
    from wpo.training.schedule import build_schedule

    optimizer = trainer.masters_and_optimizer(model, recipe.train, accelerator, resuming=False)
    schedule = build_schedule(len(tokens.pairs), recipe, 1)
    launcher = make_launcher(accelerator)
    scheduler = get_scheduler("constant", optimizer)
    model, optimizer = launcher.prepare(model, optimizer, recipe, schedule.pairs_per_step)
    return trainer.TrainState(
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
    )
