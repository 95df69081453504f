"""Files written so that nothing is lost: a kill at any moment leaves either the old file or the
new one under the final name, never half of one. Every writer in the package uses these."""
import json
import os
import shutil
import tempfile


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
    `path`. On any error the temporary file is removed and the old `path` is left as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
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
