"""Errors users see: each names the node, the input and what is accepted."""


class SDiTInputError(ValueError):
    def __init__(self, node: str, input_name: str, message: str):
        super().__init__(f"{node}: input '{input_name}': {message}")
        self.node = node
        self.input_name = input_name
