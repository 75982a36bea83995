"""The one exception type for bad input.

Every loader and validator raises :class:`DataError` (a ``ValueError``) with the
subject, the file, what was expected and what was found, so a user reading the
message can fix the record without opening a debugger.
"""

from __future__ import annotations

from os import PathLike


class DataError(ValueError):
    """Bad input: names the subject, the file, what was expected and what was found."""

    def __init__(
        self,
        problem: str,
        *,
        subject: str | None = None,
        path: str | PathLike[str] | None = None,
        expected: str | None = None,
        found: str | None = None,
    ) -> None:
        self.problem = problem
        self.subject = subject
        self.path = None if path is None else str(path)
        self.expected = expected
        self.found = found
        super().__init__(self._message())

    def __reduce__(self) -> tuple:
        # Exceptions pickle as ``cls(*args)``, which subclasses with other constructors
        # (ManifestError) cannot take: an error raised in a worker process then surfaced as
        # a bare BrokenProcessPool. Rebuild from the fields instead.
        return (_rebuild, (type(self), self.args, self.__dict__))

    def _message(self) -> str:
        where = []
        if self.subject is not None:
            where.append(f"subject {self.subject}")
        if self.path is not None:
            where.append(f"file {self.path}")
        text = (", ".join(where) + ": " if where else "") + self.problem
        if self.expected is not None:
            text += f" (expected {self.expected}"
            text += f"; found {self.found})" if self.found is not None else ")"
        elif self.found is not None:
            text += f" (found {self.found})"
        return text

    def with_context(
        self, *, subject: str | None = None, path: str | PathLike[str] | None = None
    ) -> DataError:
        """A copy that also names the subject/file (for errors raised deep inside a loader)."""
        return DataError(
            self.problem,
            subject=self.subject if self.subject is not None else subject,
            path=self.path if self.path is not None else path,
            expected=self.expected,
            found=self.found,
        )


def _rebuild(cls: type[DataError], args: tuple, fields: dict) -> DataError:
    """Unpickle a DataError (or subclass) without calling its constructor."""
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(fields)
    return err


class OutputError(RuntimeError):
    """The output itself failed (a read-only folder, a full disk): names the path.

    Not a :class:`DataError`: no record is at fault, and nothing more can be written, so the
    work stops (with one line, no traceback, from the command line).
    """

    def __init__(self, problem: str, *, path: str | PathLike[str]) -> None:
        self.problem, self.path = problem, str(path)
        super().__init__(f"cannot write {self.path}: {problem}")

    @classmethod
    def from_os_error(cls, exc: OSError, *, fallback: str | PathLike[str]) -> OutputError:
        """From an ``OSError`` of a write: its path where it names one, else ``fallback``."""
        reason = exc.strerror or str(exc)
        return cls(reason, path=exc.filename or fallback)
