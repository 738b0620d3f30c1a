"""Training machinery: everything between a model of the core and a checkpoint on disk.

=================  ==========================================================================
``loop``           ``fit(task, experiment)``: :class:`~mnistdiff.training.loop.TrainLoop`'s run loop
``state``          :class:`~mnistdiff.training.state.TrainState`: model, EMA, optimiser, RNG, epoch…
``precision``      fp32 / bf16 / channels-last, chosen at run time by measurement
``signals``        SIGINT / SIGTERM: stop cleanly at the next step, resumable
``ema``            the exponential moving average of the weights (``torch.optim.swa_utils``)
``checkpoints``    verified ``.pt`` + JSON sidecar pairs, written atomically, loaded weights-only
``experiment``     one folder per run: config, log, loss curves, samples, checkpoints
``pipelines``      ``train_ddpm`` / ``train_vae`` / ``train_ldm`` and their ``load_*``
=================  ==========================================================================
"""
