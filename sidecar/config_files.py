"""Rules and monitors files: YAML or TOML by extension, with errors that name the file and line."""
import os
import tomllib

from .settings import SettingsError


def read_yaml_or_toml(path, variable):
    """(data or {}, text, "yaml" | "toml") of the file `path` named by the setting `variable`."""
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8", errors="replace")
    except OSError as error:
        raise SettingsError("{} {}: cannot be read: {}".format(variable, path, error.strerror)) from None
    extension = os.path.splitext(path)[1].lower()
    if extension in (".yaml", ".yml"):
        import yaml
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = " at line {}, column {}".format(mark.line + 1, mark.column + 1) if mark else ""
            raise SettingsError("{} {}: not valid YAML{}: {}".format(
                variable, path, where, getattr(error, "problem", None) or error)) from None
        return ({} if data is None else data), text, "yaml"
    if extension == ".toml":
        try:
            return tomllib.loads(text), text, "toml"
        except tomllib.TOMLDecodeError as error:
            raise SettingsError("{} {}: not valid TOML: {}".format(variable, path, error)) from None
    raise SettingsError("{} {}: the name must end in .yaml, .yml or .toml".format(variable, path))
