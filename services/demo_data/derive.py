"""Derive vicuna80_guanaco7b_vs_gpt4.jsonl from shared/data/vicuna80_qlora_prd.jsonl (artidoro/qlora 7f4e95a + bcdnlp/PRD 35fb99e, MIT). Run from the repo root: python services/demo_data/derive.py"""
import json

src = '../shared/data/vicuna80_qlora_prd.jsonl'
out = 'services/demo_data/vicuna80_guanaco7b_vs_gpt4.jsonl'
rows = [json.loads(line) for line in open(src)]
items = [r for r in rows if {r['model_a'], r['model_b']} == {'guanaco-7b', 'gpt4'}]
items.sort(key=lambda r: r['meta']['question_id'])
with open(out, 'w') as f:
    for r in items:
        tuned_is_b = r['model_b'] == 'gpt4'
        m = {'A': 'base' if tuned_is_b else 'tuned', 'B': 'tuned' if tuned_is_b else 'base', 'tie': 'tie'}
        base, tuned = (r['response_a'], r['response_b']) if tuned_is_b else (r['response_b'], r['response_a'])
        rec = {k.replace('(a_first)', '(order 1)').replace('(b_first)', '(order 2)'): (m[v] if v else None)
               for k, v in sorted(r['judges'].items()) if k.startswith('gpt-4')}
        f.write(json.dumps({'id': f"vicuna80-q{r['meta']['question_id']}", 'source_id': r['id'],
                            'category': r['meta'].get('category'), 'prompt': r['question'], 'base': base,
                            'tuned': tuned, 'human_votes': [m[v] for v in r['human_votes']],
                            'recorded_judges': rec}) + '\n')
print(len(items))
