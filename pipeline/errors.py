"""Errors the pipeline raises for the caller's mistakes (mapped to 4xx by the server)."""


class InvalidRequest(ValueError):
    """A generation request the model cannot serve; `param` names the offending field."""

    def __init__(self, param: str, message: str, code: str = "invalid_value"):
        super().__init__(message)
        self.param = param
        self.message = message
        self.code = code


class ModelFolderError(ValueError):
    """A model folder or checkpoint that does not match its manifest or configs."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))
