"""alarm-bot: answers WeChat Official Account interface alarms in the group."""

__version__ = "0.1.0"
