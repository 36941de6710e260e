def analyse(studio, record):
    return {}
