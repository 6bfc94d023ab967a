package clientapi

import "github.com/gorilla/mux"

func (a *API) accountDataRoutes(r *mux.Router) {}
