"""Source containers: files that hold several images, split into parts before decoding.

One module per container registers a ``registry.Container`` under the name of its ``source`` key
(``@CONTAINERS.register("table")``): its split function (the file's bytes -> ``base.Part`` list,
each an image's bytes or an already decoded frame, or an error row) and the stage a failure to split
is charged to. ``LoadStage`` looks the container up by name; its options are the ``source.<name>``
section of the job spec (``config/source.py``).
"""
