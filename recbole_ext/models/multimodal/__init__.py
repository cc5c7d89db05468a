"""Multimodal top-K recommenders (MambaRec and its MMRec baselines). Import-free: the registry resolves lazily."""

MODELS = {
    "MambaRec": "recbole_ext.models.multimodal.mambarec:MambaRec",
    "MGCN": "recbole_ext.models.multimodal.mgcn:MGCN",
    "VBPR": "recbole_ext.models.multimodal.vbpr:VBPR",
    "FREEDOM": "recbole_ext.models.multimodal.freedom:FREEDOM",
    "LATTICE": "recbole_ext.models.multimodal.lattice:LATTICE",
    "LGMRec": "recbole_ext.models.multimodal.lgmrec:LGMRec",
    "BM3": "recbole_ext.models.multimodal.bm3:BM3",
    "DRAGON": "recbole_ext.models.multimodal.dragon:DRAGON",
    "MENTOR": "recbole_ext.models.multimodal.mentor:MENTOR",
}
