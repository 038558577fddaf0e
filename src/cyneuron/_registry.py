"""Name lookup shared by activations, losses, metrics, optimizers and initializers."""


class Registry:
    """Maps Keras-style names (case-insensitive, with aliases) to classes of one kind.

    `get` accepts an instance (returned as is), a class (instantiated) or a name
    (instantiated with default settings); anything else is a ValueError naming the kind.
    """

    def __init__(self, kind, base, classes, aliases=None):
        self.kind, self.base = kind, base
        self.classes = {cls.name: cls for cls in classes}
        self.aliases = dict(aliases or {})

    def names(self):
        return sorted(self.classes)

    def get(self, identifier):
        if isinstance(identifier, self.base):
            return identifier
        if isinstance(identifier, type) and issubclass(identifier, self.base):
            return identifier()
        key = identifier.lower() if isinstance(identifier, str) else identifier
        key = self.aliases.get(key, key)
        if isinstance(key, str) and key in self.classes:
            return self.classes[key]()
        raise ValueError(f"unknown {self.kind} {identifier!r}; expected one of {self.names()}")
