"""Student models: point encoders (a registry of families), projection heads, task heads.

    from train.models import create_encoder, list_encoders
    encoder = create_encoder("point-m2ae")        # any name of list_encoders()
"""

from train.models.encoders import create_encoder, encoder_from_record, list_encoders

__all__ = ["create_encoder", "encoder_from_record", "list_encoders"]
