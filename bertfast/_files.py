"""Files written so that nothing is lost: a kill at any moment leaves either the old file or the
new one under the final name, never half of one. Every writer in the package uses these, and
read_json reads back what they wrote, naming a file that turns out corrupt."""
import json
import os
import shutil
import tempfile


class CorruptFileError(ValueError):
    """A file the package wrote (or expects) that cannot be parsed: the message names it and what to do."""


def read_json(path, advice, expect=dict):
    """The JSON value in `path`, which must be of type `expect`; a file that is not valid UTF-8 JSON
    of that type raises CorruptFileError naming the file, the place and `advice` (what to do)."""
    try:
        with open(path, "rb") as f:
            value = json.loads(f.read().decode("utf-8"))
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 text (byte {e.start})"
    except json.JSONDecodeError as e:
        problem = f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
    except (ValueError, RecursionError) as e:  # huge integers, nesting too deep
        problem = f"not readable JSON ({e})"
    else:
        if isinstance(value, expect):
            return value
        problem = f"expected a JSON {expect.__name__}, found {type(value).__name__}"
    raise CorruptFileError(f"{path} is corrupt: {problem}; {advice}")


def _file_mode():
    """The mode open(path, "w") gives a new file: 0o666 less the process's umask."""
    try:
        with open("/proc/self/status") as f:  # reads the umask without changing it (Linux)
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def fsync_dir(path):
    """Make a rename inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write):
    """write(tmp_path) fills a temporary file beside `path`, which is then synced and renamed over
    `path`. On any error the temporary file is removed and the old `path` is left as it was. The
    file gets the mode a plain open(path, "w") would give (mkstemp's 0600 does not leak through)."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder, not a file: give the path of a file to write")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())  # after write: some writers (safetensors) create the file anew
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(folder)


def atomic_write_bytes(path, data):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write(path, write)


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, **dump_options):
    """JSON with a trailing newline; dump_options go to json.dumps (default indent=2)."""
    atomic_write_text(path, json.dumps(obj, **({"indent": 2} | dump_options)) + "\n")


def fsync_tree(path):
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def empty_folder(path, ignore_errors=False):
    """Remove everything inside `path`, keeping the folder itself."""
    for name in os.listdir(path):
        entry = os.path.join(path, name)
        if os.path.isdir(entry) and not os.path.islink(entry):
            shutil.rmtree(entry, ignore_errors=ignore_errors)
        else:
            try:
                os.remove(entry)
            except OSError:
                if not ignore_errors:
                    raise
