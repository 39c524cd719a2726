"""One registry for what evalkit is extended with: tasks, backends, token counters.

An entry comes from one of three places, and is resolved by name when it is asked for:
- evalkit's own, as lazy "module:attr" entries: nothing is imported until its name is
  asked for, so an engine that is not installed costs nothing until then;
- an installed package's entry points, in the groups "evalkit.tasks", "evalkit.backends"
  and "evalkit.counters" (`echo = "my_plugin:TASK"`): a package adds them with no change
  to evalkit;
- code: `register_task`, `register_backend`, `register_counter` (the decorators).
A family of entries is named by a prefix (`lm_eval:NAME`, any task of lm-eval's catalogue):
its "module:attr" factory makes the entry of a name when it is first asked for, and a
line says what the family holds (`evalkit tasks` prints it).
A name given by two of them is refused, naming both; a module registering its own lazy
entry as it is imported is no clash. An entry that does not load (its package is missing,
it is not what its group holds) is one EvalkitError line naming it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from evalkit.types import EvalkitError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind by name (see the module docstring). `check` returns the loaded
    object as a T, or raises TypeError saying what it should be."""

    def __init__(self, kind: str, group: str, builtin: Mapping[str, str],
                 check: Callable[[object], T],
                 families: Mapping[str, tuple[str, str]] | None = None) -> None:
        self.kind = kind
        # "prefix:" -> "module:factory"; and "prefix:" -> what the family holds
        self.families = {prefix: target for prefix, (target, _) in (families or {}).items()}
        self.family_help = {prefix: said for prefix, (_, said) in (families or {}).items()}
        self.group = group
        self._check = check
        self._lazy: dict[str, str] = dict(builtin)  # name -> "module:attr", not loaded yet
        self._loaded: dict[str, T] = {}
        self._where: dict[str, str] = {name: "evalkit" for name in builtin}
        self._plugins_read = False

    def register(self, name: str, obj: T) -> T:
        """Register `obj` under `name` in code (a module registering its own lazy entry as
        it is imported resolves that entry)."""
        self._read_plugins()
        if name in self._loaded and self._loaded[name] is not obj:
            raise EvalkitError(f"{self.kind} '{name}' is registered twice ({self._where[name]} "
                               "and in code): give one of them another name")
        self._lazy.pop(name, None)
        self._loaded[name] = self._checked(name, obj)
        self._where.setdefault(name, "code")
        return obj

    def get(self, name: str) -> T:
        self._read_plugins()
        if name not in self._loaded:
            target = self._lazy.get(name)
            family = self._family(name)
            if target is None and family is not None:
                factory = self._load(name, self.families[family])
                if not callable(factory):
                    raise EvalkitError(f"{self.kind} family '{family}' does not load: "
                                       f"{self.families[family]} is not callable")
                self._loaded[name] = self._checked(name, factory(name.removeprefix(family)))
                return self._loaded[name]
            if target is None:
                raise EvalkitError(f"unknown {self.kind} '{name}': use one of "
                                   f"{', '.join(self.names())}")
            obj = self._load(name, target)
            if name not in self._loaded:  # importing it may have registered it already
                self._loaded[name] = self._checked(name, obj)
            self._lazy.pop(name, None)
        return self._loaded[name]

    def origin(self, name: str) -> str:
        """Where an entry comes from: "evalkit", "the package NAME", or "code"."""
        self._read_plugins()
        return self._where.get(name, "evalkit" if self._family(name) else "code")

    def knows(self, name: str) -> bool:
        """Whether `name` is an entry or a family's (its data may still be missing)."""
        return name in self.names() or self._family(name) is not None

    def _family(self, name: str) -> str | None:
        return next((f for f in self.families if name.startswith(f) and name != f), None)

    def names(self) -> list[str]:
        """Every name, evalkit's own first (in their order), then plugins' and code's."""
        self._read_plugins()
        return list(dict.fromkeys([*self._where]))

    def _load(self, name: str, target: str) -> object:
        module, _, attr = target.partition(":")
        try:
            obj: object = importlib.import_module(module)
            for part in attr.split(".") if attr else ():
                obj = getattr(obj, part)
        except EvalkitError:
            raise  # the module's own one line (a missing extra, say)
        except (ImportError, AttributeError) as exc:
            raise EvalkitError(f"{self.kind} '{name}' ({target}, from "
                               f"{self._where.get(name, 'evalkit')}) "
                               f"does not load: {exc}: install or fix that package") from None
        return obj

    def _checked(self, name: str, obj: object) -> T:
        try:
            return self._check(obj)
        except TypeError as exc:
            raise EvalkitError(f"{self.kind} '{name}' (from {self._where.get(name, 'code')}) "
                               f"is not a {self.kind}: {exc}") from None

    def _read_plugins(self) -> None:
        """The installed packages' entry points of this group, as lazy entries (once)."""
        if self._plugins_read:
            return
        self._plugins_read = True
        for ep in entry_points(group=self.group):
            where = f"the package {ep.dist.name if ep.dist else '?'}"
            if ep.name in self._where:
                raise EvalkitError(f"{self.kind} '{ep.name}' is registered twice "
                                   f"({self._where[ep.name]} and {where}): uninstall one, or "
                                   "rename the plugin's")
            self._lazy[ep.name] = ep.value
            self._where[ep.name] = where
