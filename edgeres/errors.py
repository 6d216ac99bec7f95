"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input: a message naming the file, layer or op and what to do. Exit code 2."""

    exit_code = 2


def load_torch_file(path: object, what: str, hint: str) -> object:
    """``torch.load`` of tensors only, with a one-line UserError for a file that is not one
    (torch's own message runs to a dozen lines of pickling advice)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise UserError(f"{what} '{path}' does not exist") from exc
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        detail = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = detail[-2] if len(detail) > 1 and "weights_only" in detail[0] else (
            detail[0] if detail else type(exc).__name__)
        raise UserError(f"cannot read {what} '{path}' as tensors saved by torch.save "
                        f"({reason}); {hint}") from exc


class AccuracyFloorError(Exception):
    """The result misses a stated accuracy floor (``--min-agreement``, ``--max-drop``). Exit 1."""

    exit_code = 1
