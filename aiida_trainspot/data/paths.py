"""Safe file names: a name taken from a node never leaves the folder it is written into.

Names of model files, checkpoints, extension trees and datasets come from node attributes
and repositories, which anyone can craft (an archive import, a hand-made node). Before such a
name is joined to a folder on disk, :func:`path_inside` checks that the result stays in that
folder; :func:`relative_inside` makes the same check without a folder on disk (a job folder on
a remote computer); :func:`plain_filename` checks a name that must be one file name.
No AiiDA import: runners and plain helpers use these too.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = ('path_inside', 'plain_filename', 'relative_inside')


def _text(name: object, what: str) -> str:
    if not isinstance(name, (str, os.PathLike)):
        raise ValueError(f'{what}: expected a file name, got {type(name).__name__} {name!r}')
    text = os.fspath(name)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f'{what}: the file name is empty ({name!r})')
    if '\0' in text:
        raise ValueError(f'{what}: the file name {text!r} contains a NUL character')
    return text


def plain_filename(name: object, what: str = 'filename') -> str:
    """``name`` if it is one plain file name (no folder part, not ``.`` or ``..``).

    :raises ValueError: naming ``what`` and the offending name.
    """
    text = _text(name, what)
    if '/' in text or '\\' in text or text in ('.', '..'):
        raise ValueError(f'{what}: {text!r} is not a plain file name (no folders, no `.` or `..`)')
    return text


def relative_inside(name: object, what: str = 'filename') -> PurePosixPath:
    """``name`` as a relative POSIX path that stays inside the folder it is relative to.

    A lexical check only (no file system): ``..`` parts are allowed while they stay inside.

    :raises ValueError: naming ``what`` and the offending name, when it is empty, absolute
        (``/x``, ``C:\\x``), leads outside the folder (``../x``, ``a/../../x``) or names the
        folder itself (``.``, ``a/..``).
    """
    text = _text(name, what)
    pure = PurePosixPath(text)
    if pure.is_absolute() or PureWindowsPath(text).drive or text.startswith('\\'):
        raise ValueError(f'{what}: {text!r} is an absolute path; give a name inside the folder')
    depth = 0
    for part in pure.parts:
        depth += -1 if part == '..' else 1
        if depth < 0:
            raise ValueError(f'{what}: {text!r} leads outside the folder it is written into')
    if depth == 0:
        raise ValueError(f'{what}: {text!r} names the folder itself, not a file inside it')
    return pure


def path_inside(directory: str | os.PathLike, name: object, what: str = 'filename') -> Path:
    """``directory / name``, refused unless it stays inside ``directory``.

    ``name`` is a relative POSIX path (``a.model``, ``extensions/lib/x.so``), checked by
    :func:`relative_inside` and then on the real paths, so that a symbolic link inside
    ``directory`` that points out of it is refused too.

    :raises ValueError: naming ``what`` and the offending name.
    """
    pure = relative_inside(name, what)
    root = Path(directory)
    target = root.joinpath(*pure.parts)
    real_root = os.path.realpath(root)
    real_target = os.path.realpath(target)
    if real_target == real_root or os.path.commonpath([real_root, real_target]) != real_root:
        raise ValueError(f'{what}: {str(pure)!r} leads outside the folder it is written into')
    return target
