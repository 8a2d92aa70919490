"""The record of one probe (:class:`ProbeResult`), its error classes and methodology version.

The vocabulary the prober produces and storage and the aggregator consume;
it imports nothing else of routewatch.
"""
