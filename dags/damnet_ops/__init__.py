"""Airflow wiring of DAM-Net steps: settings, the step operator factory, the labels sensor.

Imported by the DAG files at parse time, so it imports nothing heavy at module level
(no torch, no damnet, no Kubernetes client unless execution is ``kubernetes``).
"""
