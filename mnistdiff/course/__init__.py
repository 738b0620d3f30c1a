"""The course: what the nine chapters and the book need around the core.

=================  ==========================================================================
``chapters``       the list of chapters, in reading order (the one list)
``profiles``       ``smoke`` / ``book`` / ``full``: model sizes and budgets, ``$MNISTDIFF_PROFILE``
``pretrained``     ``get_ddpm`` / ``get_vae`` / ``get_ldm``: load the profile's checkpoint, else train it
``generators``     the generators chapter 6 evaluates, in table order
``widgets``        the chapters' interactive explorers (needs ``[course]``: ipywidgets)
``fallbacks``      the static pictures the book shows in the widgets' place
``runner``         run every chapter, store its outputs, time it (``python -m mnistdiff course``)
=================  ==========================================================================
"""
