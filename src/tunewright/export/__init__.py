"""Export a tuned run: PEFT adapter, merged Hugging Face folder, or GGUF (llama.cpp / Ollama),
each checked against the tuned model before it is published. Front door: `runner.export`."""
