"""Evaluation: how close are generated digits to real MNIST?

=======================  ==========================================================================
``classifier``           the two feature networks: the project's MNIST classifier and an independent ResNet
``classifier_training``  training them, reproducibly (``scripts/train_classifier.py``)
``features``             input checks, and classifier features of images
``distances``            classifier-FID, KID, precision/recall, nearest-training-image, class statistics
``metrics``              ``evaluate``, ``real_floor``, ``evaluate_npz`` and the tables' number formats
``guidance``             a class-conditional model's accuracy, FID, precision, recall against w
``umap_eval``            a UMAP fitted on real digits, with k-NN two-sample accuracies (needs ``[course]``)
``report``               draw, score and floor generators; ``save_results`` writes the files the book reads
=======================  ==========================================================================
"""
