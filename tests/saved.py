"""A network saved the way toy-train saved it before it wrote run folders: {kind, config, state_dict}."""
from cfgedu.core.io import atomic_torch_save
from cfgedu.nets.registry import model_record


def write_model_file(path, model, kind: str):
    return atomic_torch_save(model_record(model, kind), path)
