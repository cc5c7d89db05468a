"""Medication-recommendation models, declared lazily for the registry (keep this file import-free)."""

MODELS = {
    "CafeMed": "recbole_ext.models.medrec.cafemed:CafeMed",
    "CausalMed": "recbole_ext.models.medrec.cafemed:CausalMed",
    "CafeMedNoCWG": "recbole_ext.models.medrec.cafemed:CafeMedNoCWG",
    "CafeMedNoCHARM": "recbole_ext.models.medrec.cafemed:CafeMedNoCHARM",
    "RETAIN": "recbole_ext.models.medrec.retain:RETAIN",
    "GAMENet": "recbole_ext.models.medrec.gamenet:GAMENet",
    "SafeDrug": "recbole_ext.models.medrec.safedrug:SafeDrug",
    "MoleRec": "recbole_ext.models.medrec.molerec:MoleRec",
    "MedContext": "recbole_ext.models.medrec.context_adapter:MedContext",
    "MedFM": "recbole_ext.models.medrec.context_adapter:MedFM",
    "MedDeepFM": "recbole_ext.models.medrec.context_adapter:MedDeepFM",
    "MedWideDeep": "recbole_ext.models.medrec.context_adapter:MedWideDeep",
}
