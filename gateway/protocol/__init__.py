"""Wire formats shared by gateway and adapters: envelope, approach tokens, case-message schemas,
receipts, refusal reasons, covenant policy. Imports ``keys`` only."""
