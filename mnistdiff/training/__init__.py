"""Training machinery: everything between a model of the core and a checkpoint on disk.

=================  ==========================================================================
``loop``           ``fit(task, experiment)``: :class:`~mnistdiff.training.loop.TrainLoop`'s run loop
``state``          :class:`~mnistdiff.training.state.TrainState`: model, EMA, optimiser, RNG, epoch…
``precision``      fp32 / bf16 / channels-last, chosen at run time by measurement
``signals``        SIGINT / SIGTERM: stop cleanly at the next step, resumable
``ema``            the exponential moving average of the weights (``torch.optim.swa_utils``)
``checkpoints``    the resumable state ``last.pt``: verified ``.pt`` + JSON sidecar pairs, atomic, weights-only
``experiment``     one folder per run: config, log, loss curves, samples, checkpoints
``pipelines``      ``train_ddpm`` / ``train_vae`` / ``train_ldm`` / ``train_cldm``: a run config to a model file
``kinds``          the model kinds, one entry each: config, train, load (what the CLI and the course read)
``convert``        old ``.pt`` + sidecar models to the one-file format
=================  ==========================================================================
"""
