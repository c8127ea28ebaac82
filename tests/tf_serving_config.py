"""Parse a models.config as TF Serving does: a text-format ModelServerConfig.

The message types are built here from tensorflow_serving/config/model_server_config.proto's field
names and numbers (ModelServerConfig.model_config_list = 1; ModelConfigList.config = 1;
ModelConfig.name = 1, base_path = 2, model_platform = 4), since tensorflow-serving-api is not a
dependency. The parse is strict: a field TF Serving does not know, or bad syntax, raises.
"""
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

_F = descriptor_pb2.FieldDescriptorProto


def _model_server_config_class():
    proto = descriptor_pb2.FileDescriptorProto(name="test_model_server_config.proto",
                                               package="tensorflow.serving", syntax="proto3")
    config = proto.message_type.add(name="ModelConfig")
    for name, number in (("name", 1), ("base_path", 2), ("model_platform", 4)):
        config.field.add(name=name, number=number, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    listing = proto.message_type.add(name="ModelConfigList")
    listing.field.add(name="config", number=1, type=_F.TYPE_MESSAGE, label=_F.LABEL_REPEATED,
                      type_name=".tensorflow.serving.ModelConfig")
    server = proto.message_type.add(name="ModelServerConfig")
    server.field.add(name="model_config_list", number=1, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
                     type_name=".tensorflow.serving.ModelConfigList")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.ModelServerConfig"))


ModelServerConfig = _model_server_config_class()


def parse_models_config(text: str) -> list[tuple[str, str, str]]:
    """[(name, base_path, model_platform)] of a models.config, in file order."""
    message = text_format.Parse(text, ModelServerConfig())
    return [(c.name, c.base_path, c.model_platform) for c in message.model_config_list.config]
