"""The exception hierarchy of alarm-bot.

::

    BotError
     ├── KnowledgeError      the knowledge base failed to load or validate
     ├── KnowledgeEditError  a change to the knowledge from the chat was refused
     ├── AlarmParseError     reserved: the parser itself never raises
     ├── RenderError         a template failed to render
     ├── SettingsError       a settings file or variable is invalid
     └── GatewayError        the Wechaty gateway refused the bot (e.g. its token)
"""


class BotError(Exception):
    """Base class for every error alarm-bot raises on purpose."""


class KnowledgeError(BotError):
    """The knowledge base is invalid; ``problems`` lists every message."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class KnowledgeEditError(BotError):
    """A knowledge change was refused; ``code`` says why, ``details`` the values.

    The reply is rendered from ``knowledge/templates/*/kb_error.j2`` by ``code``.
    """

    def __init__(self, code: str, **details: object) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code}: {details}" if details else code)


class AlarmParseError(BotError):
    """An alarm could not be parsed (never raised by ``parse``)."""


class RenderError(BotError):
    """A template could not be rendered; ``reason`` says why, without the place."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


class SettingsError(BotError):
    """A setting has a bad value."""


class GatewayError(BotError):
    """The Wechaty gateway refused the bot, so retrying cannot help."""
