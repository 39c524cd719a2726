"""lm-eval's tasks on evalkit's Model, planned whole (lm-eval scores a task at once).

    adapter.py      any evalkit Model as lm-eval's `evalkit` model (and lm-eval's CLI)
    leaderboard.py  the Open LLM Leaderboard v1 suite: arc_challenge, hellaswag,
                    truthfulqa_mc2, mmlu, their offline data and their summary rows
    catalogue.py    any task or group of lm-eval's catalogue as `lm_eval:NAME`
"""
