"""Use cases shared by the Gradio tabs and the HTTP API. No Gradio imports here."""
