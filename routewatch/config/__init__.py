"""Configuration: what to probe and how (``probes.yaml``), checked before anything starts.

- :mod:`~routewatch.config.model`: the typed sections and their rules;
- :mod:`~routewatch.config.loader`: reading a file (line numbers, size, depth and alias limits);
- :mod:`~routewatch.config.summary`: what ``routewatch check-config`` prints;
- :mod:`~routewatch.config.durations`: ``30s``, ``7d`` and friends.

This package imports nothing else of routewatch; every other layer may import it.
"""

from routewatch.config.loader import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, load_config, parse_config
from routewatch.config.model import (
    KEYS_FROM_ENV,
    REASONING_SLOW_TPS,
    SIMULATOR,
    AggregatorConfig,
    ApiConfig,
    Config,
    ConfigError,
    ConfigIssue,
    Deadlines,
    DiscoverConfig,
    IngestConfig,
    IngestToken,
    MaintenanceWindow,
    Message,
    MetricsConfig,
    NotificationsConfig,
    NotificationTarget,
    Price,
    PromptConfig,
    ReasoningConfig,
    ReasoningTimeoutsConfig,
    RouterConfig,
    ScheduleConfig,
    SLOConfig,
    StorageConfig,
    TimeoutsConfig,
)
from routewatch.config.summary import ConfigSummary, check_config_main, format_summary, summarize

__all__ = [
    "KEYS_FROM_ENV",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "REASONING_SLOW_TPS",
    "SIMULATOR",
    "AggregatorConfig",
    "ApiConfig",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "ConfigSummary",
    "Deadlines",
    "DiscoverConfig",
    "IngestConfig",
    "IngestToken",
    "MaintenanceWindow",
    "Message",
    "MetricsConfig",
    "NotificationTarget",
    "NotificationsConfig",
    "Price",
    "PromptConfig",
    "ReasoningConfig",
    "ReasoningTimeoutsConfig",
    "RouterConfig",
    "SLOConfig",
    "ScheduleConfig",
    "StorageConfig",
    "TimeoutsConfig",
    "check_config_main",
    "format_summary",
    "load_config",
    "parse_config",
    "summarize",
]
