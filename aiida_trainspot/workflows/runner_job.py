"""The job description shared by the CalcJobs whose runner is a console script of the package.

Each such runner reads one JSON configuration from the job folder, writes its
outputs next to it, and reports on stdout/stderr; the CalcJob only says which
files to copy in and retrieve.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from aiida.common import CalcInfo, CodeInfo
from aiida.common.folders import Folder


def runner_calcinfo(
    calculation: Any,
    folder: Folder,
    config: Mapping[str, Any],
    *,
    config_file: str,
    stdout: str,
    stderr: str,
    local_copy_list: Sequence[tuple[str, str, str]],
    retrieve: Sequence[str],
) -> CalcInfo:
    """Write ``config`` as JSON and describe one run of the calculation's code on it."""
    with folder.open(config_file, 'w', encoding='utf-8') as handle:
        json.dump(dict(config), handle, indent=2, sort_keys=True)
    codeinfo = CodeInfo()
    codeinfo.code_uuid = calculation.inputs.code.uuid
    codeinfo.cmdline_params = [config_file]
    codeinfo.stdout_name = stdout
    codeinfo.stderr_name = stderr
    codeinfo.withmpi = calculation.inputs.metadata.options.withmpi
    calcinfo = CalcInfo()
    calcinfo.codes_info = [codeinfo]
    calcinfo.local_copy_list = list(local_copy_list)
    calcinfo.retrieve_list = [*retrieve, stdout, stderr]
    return calcinfo
