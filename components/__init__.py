"""Pipeline steps: one thin command per step over the ``damnet`` library.

Each module has ``add_arguments(parser)`` and ``run(args)``; ``components.cli`` wires them
into the ``damnet`` console command. The same command runs in a pod, under DVC, in
Kubeflow and in tests.
"""
